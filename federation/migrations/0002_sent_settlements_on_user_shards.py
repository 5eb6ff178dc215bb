"""The requesting side's settlement rows move to the user's shard (`SentSettlement`), beside
the charge each query paid, and move with the user. `sent` rows written before stay on
`default` in `Settlement`, where the settlement commands still count them."""
import uuid

from django.db import migrations, models

from rentahal.change_numbers import TrackChanges


class Migration(migrations.Migration):

    dependencies = [
        ('federation', '0001_peers_invitations_keys_settlements'),
    ]

    operations = [
        migrations.CreateModel(
            name='SentSettlement',
            fields=[
                ('id', models.UUIDField(default=uuid.uuid4, editable=False, primary_key=True, serialize=False)),
                ('peer', models.CharField(help_text="The serving peer's federation id.", max_length=63)),
                ('query_id', models.CharField(help_text='Our query id.', max_length=64)),
                ('user_guid', models.CharField(help_text='The user who asked (a pseudonym if we only forwarded it).', max_length=64)),
                ('user', models.CharField(help_text='The per-peer pseudonym the peer saw.', max_length=64)),
                ('query_type', models.CharField(max_length=16)),
                ('service_seconds', models.FloatField(default=0.0)),
                ('price_per_query', models.DecimalField(decimal_places=6, default=0, max_digits=12)),
                ('price_per_second', models.DecimalField(decimal_places=6, default=0, max_digits=12)),
                ('amount', models.DecimalField(decimal_places=6, default=0, max_digits=14)),
                ('status', models.CharField(choices=[('done', 'Done'), ('failed', 'Failed')], max_length=8)),
                ('created_at', models.DateTimeField(auto_now_add=True, db_index=True)),
                ('change_number', models.BigIntegerField(default=0, editable=False, help_text='Stamped by a database trigger on every insert and update (rentahal.change_numbers).')),
            ],
            options={
                'ordering': ['-created_at'],
                'indexes': [models.Index(fields=['user_guid', '-created_at'], name='federation__user_gu_c67736_idx')],
                'constraints': [models.UniqueConstraint(fields=('peer', 'query_id'), name='one_sent_settlement_per_peer_and_query')],
            },
        ),
        TrackChanges('sentsettlement', key='user_guid', changes='change_number'),
    ]
