from django.apps import AppConfig


class FederationConfig(AppConfig):
    name = "federation"
    verbose_name = "Federation"

    def ready(self):
        # pools imports no other app: the peer wire format's client is handed to it here.
        from federation.client import PeerClient
        from pools.clients import register_client

        register_client(PeerClient())
