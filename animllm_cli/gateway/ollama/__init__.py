"""The Ollama API (`/api/...`) on the gateway's port, over the same pool, scheduler, limits
and key as the OpenAI routes: desktop tools that speak only Ollama work unchanged.

vLLM does not serve this API, so unlike the other routes these are translated, not relayed
as they came: a request becomes the engine's OpenAI request (requests.py), sent through the
same relay (gateway/routes_clients.py, `relay`), and the engine's event stream becomes
Ollama's NDJSON on the way back (answers.py). What a model is in Ollama's terms (its
details, context length, capabilities, template) is read from its files (models.py);
`/api/pull` runs the gateway's pull of a configured model (pulls.py); the routes, and the
refusals of the ones with no meaning here, are in routes.py.
"""
