"""The HTTP layer of jaxembed: a Sanic app speaking the OpenAI embeddings protocol."""
