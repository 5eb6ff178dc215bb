"""A move records where the source's change numbers stood at its bulk copy (rentahal.change_numbers)."""
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('rentahal', '0001_initial'),
    ]

    operations = [
        migrations.AddField(
            model_name='shardmove',
            name='watermarks',
            field=models.JSONField(default=dict),
        ),
    ]
