"""The Dash + Flask web app: pages, auth and the JSON API. Never loads a model."""
