"""The HTTP doors for programs: /v1 (OpenAI-compatible) and the classic REST routes. Each
request is a query like any from /ws: authenticated by an API key (accounts.actions.keys),
let in under the key's limits (accounts.limits), accepted by `realms.lifecycle.accept_query`
and answered from the pushes of its job."""
