"""Runtime health moves to Redis (pools.state): `health_score` and `last_active` go, and
`is_blacklisted` becomes the operator's own blacklist.

Until now the health rules set `is_blacklisted` (always with a score of 0). Those rows are
cleared, so a worker the health check had taken out is not left behind an operator's switch
that no probe lifts; its runtime state starts fresh and the next probe or failure scores it.
A worker blacklisted with a score above 0 was blacklisted by hand and stays so.
"""
from django.db import migrations, models, router


def clear_health_rule_blacklists(apps, schema_editor):
    Worker = apps.get_model("pools", "Worker")
    alias = schema_editor.connection.alias
    if router.allow_migrate_model(alias, Worker):
        Worker.objects.using(alias).filter(is_blacklisted=True, health_score__lte=0).update(is_blacklisted=False)


class Migration(migrations.Migration):

    dependencies = [
        ('pools', '0002_pool_aliases_realms_outcomes'),
    ]

    operations = [
        migrations.RunPython(clear_health_rule_blacklists, migrations.RunPython.noop),
        migrations.RemoveField(
            model_name='worker',
            name='health_score',
        ),
        migrations.RemoveField(
            model_name='worker',
            name='last_active',
        ),
        migrations.AlterField(
            model_name='worker',
            name='is_blacklisted',
            field=models.BooleanField(default=False, help_text='Keep this server out of selection until an operator clears this; health checks never change it.', verbose_name='blacklisted by an operator'),
        ),
    ]
