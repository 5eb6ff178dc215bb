"""Create the four default realms, one per query type (seed 002)."""
from django.db import migrations, router

DEFAULT_REALMS = [("$CHAT", "chat"), ("$VISION", "vision"), ("$IMAGINE", "imagine"), ("$SPEECH", "speech")]


def create_default_realms(apps, schema_editor):
    Realm = apps.get_model("realms", "Realm")
    alias = schema_editor.connection.alias
    if not router.allow_migrate_model(alias, Realm):
        return
    for name, query_type in DEFAULT_REALMS:
        Realm.objects.using(alias).get_or_create(name=name, defaults={"query_type": query_type})


class Migration(migrations.Migration):
    dependencies = [("realms", "0001_initial")]

    operations = [migrations.RunPython(create_default_realms, migrations.RunPython.noop)]
