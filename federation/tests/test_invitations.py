"""An invitation's token is what one operator hands another to paste into
`manage.py federation_join URL TOKEN`."""
from federation import actions
from federation.management.commands.federation_join import Command


def test_every_invitation_token_is_taken_by_federation_join_as_it_is(db):
    parser = Command().create_parser("manage.py", "federation_join")

    for _ in range(50):
        token = actions.create_invitation(acting_user=None)[1]

        assert token.isalnum()
        assert parser.parse_args(["https://peer.example", token]).token == token
