"""Create the four default realms, one per query type."""
from django.db import migrations, router

from realms.defaults import ensure_default_realms


def create_default_realms(apps, schema_editor):
    Realm = apps.get_model("realms", "Realm")
    alias = schema_editor.connection.alias
    if router.allow_migrate_model(alias, Realm):
        ensure_default_realms(Realm, using=alias)


class Migration(migrations.Migration):
    dependencies = [("realms", "0001_initial")]

    operations = [migrations.RunPython(create_default_realms, migrations.RunPython.noop)]
