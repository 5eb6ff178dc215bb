"""The full-text index that `accounts.actions.search` ranks past queries with (per shard)."""
from django.db import migrations

# accounts.actions.search.SEARCH_DOCUMENT, which must stay the same expression.
SEARCH_DOCUMENT = (
    "to_tsvector('english'::regconfig, left(prompt, 100000) || ' ' || "
    "CASE WHEN result_type = 'text' THEN left(result, 100000) ELSE '' END)"
)


class Migration(migrations.Migration):
    dependencies = [("accounts", "0007_query_audio_and_speech_task")]

    operations = [
        migrations.RunSQL(
            f"CREATE INDEX accounts_query_search ON accounts_query USING gin (({SEARCH_DOCUMENT}))",
            "DROP INDEX accounts_query_search",
            # The router sends per-user tables' operations to the shards only.
            hints={"model_name": "query"},
        )
    ]
