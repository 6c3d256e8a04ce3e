"""jaxembed inside other frameworks' pipelines (`jaxembed.integrations.ray`: Ray Data)."""
