"""A realm name follows the one `$NAME` rule (pools.models); a new realm's queue limit is QUEUE_LIMIT."""

import django.core.validators
import realms.models
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('realms', '0003_realm_limits_backups_scaling_advice'),
    ]

    operations = [
        migrations.AlterField(
            model_name='realm',
            name='name',
            field=models.CharField(max_length=64, unique=True, validators=[django.core.validators.RegexValidator('^\\$[A-Z0-9_]+$', 'A realm name is $ followed by capital letters, digits or underscores, e.g. $CHAT.')]),
        ),
        migrations.AlterField(
            model_name='realm',
            name='queue_limit',
            field=models.PositiveIntegerField(default=realms.models.default_queue_limit, help_text="Queries waiting in this realm's queue before new ones are refused."),
        ),
    ]
