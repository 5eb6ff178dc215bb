"""Moved rows carry a change number that a trigger stamps on every write, so a shard move's
fenced step copies only what changed since its bulk copy (rentahal.change_numbers). Rows
already there keep 0: older than any move that starts after this migration."""
from django.db import migrations, models

from rentahal.change_numbers import TrackChanges


class Migration(migrations.Migration):

    dependencies = [
        ('accounts', '0002_drop_queued_status'),
    ]

    operations = [
        migrations.AddField(
            model_name='charge',
            name='change_number',
            field=models.BigIntegerField(default=0, editable=False, help_text='Stamped by a database trigger on every insert and update (rentahal.change_numbers).'),
        ),
        migrations.AddField(
            model_name='query',
            name='change_number',
            field=models.BigIntegerField(default=0, editable=False, help_text='Stamped by a database trigger on every insert and update (rentahal.change_numbers).'),
        ),
        migrations.AddField(
            model_name='user',
            name='change_number',
            field=models.BigIntegerField(default=0, editable=False, help_text='Stamped by a database trigger on every insert and update (rentahal.change_numbers).'),
        ),
        TrackChanges('user', key='guid', changes='change_number'),
        TrackChanges('query', key='user', changes='change_number'),
        TrackChanges('charge', key='user', changes='change_number'),
    ]
