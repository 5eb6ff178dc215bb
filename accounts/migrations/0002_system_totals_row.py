"""Create the system-totals row on every database that holds per-user rows."""
from django.db import migrations, router


def create_totals_row(apps, schema_editor):
    SystemTotals = apps.get_model("accounts", "SystemTotals")
    alias = schema_editor.connection.alias
    if router.allow_migrate_model(alias, SystemTotals):
        SystemTotals.objects.using(alias).get_or_create(pk=1)


class Migration(migrations.Migration):
    dependencies = [("accounts", "0001_initial")]

    operations = [migrations.RunPython(create_totals_row, migrations.RunPython.noop)]
