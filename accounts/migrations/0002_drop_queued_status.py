"""Queries are no longer marked `queued` after their job is enqueued (nothing read it, and it
cost a write per query); rows left in that state are simply not started yet."""
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('accounts', '0001_initial'),
    ]

    operations = [
        migrations.RunSQL(
            "UPDATE accounts_query SET status = 'accepted' WHERE status = 'queued'",
            reverse_sql=migrations.RunSQL.noop,
            hints={"model_name": "query"},
        ),
        migrations.AlterField(
            model_name='query',
            name='status',
            field=models.CharField(choices=[('accepted', 'Accepted'), ('running', 'Running'), ('done', 'Done'), ('failed', 'Failed')], default='accepted', max_length=16),
        ),
    ]
