"""The models: request and answer types, the API SDKs, the embedded model, the cache."""
