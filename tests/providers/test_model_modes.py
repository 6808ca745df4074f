"""A provider model saved without a mode takes the inferred one (accounting/prices.py `mode_infer`):
the shipped price catalogue's, else the name's (`embed`), else chat; from YAML, the admin and the
operator API alike, and the admin shows what was inferred."""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.core.management import call_command

from accounting.prices import mode_infer
from accounting.services import api_key_create, tenant_create
from providers.models import Provider, ProviderModel
from tests.asgi_client import ApiClient


@pytest.mark.parametrize(("upstream", "mode"), [
    ("text-embedding-3-small", "embedding"),  # the catalogue says so
    ("text-embedding-ada-002", "embedding"),
    ("text-embedding-3-large-2025-01-01", "embedding"),  # a dated snapshot of a catalogue entry
    ("nomic-embed-text", "embedding"),  # not in the catalogue: the name
    ("Cohere-Embed-v4", "embedding"),
    ("gpt-4o-mini", "chat"),  # in the catalogue, chat
    ("my-own-model", "chat"),
    ("dall-e-3", "image"), ("gpt-image-1", "image"), ("imagen-3.0-generate", "image"),
    ("whisper-1", "transcription"), ("gpt-4o-mini-transcribe", "transcription"), ("whisper-large-v3", "transcription"),
    ("tts-1-hd", "speech"), ("gpt-4o-mini-tts", "speech"),
    ("omni-moderation-latest", "moderation"), ("text-moderation-stable", "moderation"),
    ("rerank-v3.5", "rerank"), ("jina-reranker-v2-base-multilingual", "rerank"), ("BAAI/bge-reranker-large", "rerank"),
])
def test_the_inferred_mode(upstream, mode):
    assert mode_infer(upstream) == mode


CONFIG = """
providers:
  - name: fake
    type: openai
    api_base: {url}/v1
    api_key: sk-fake-provider-secret-0001
    models:
      - alias: text-embedding-3-small
        input_price_per_million: 0.02
      - alias: embeddings-by-name
        upstream: text-embedding-3-small
      - alias: gpt-4o-mini
      - alias: chat-said
        upstream: text-embedding-ada-002
        mode: chat
"""


@pytest.mark.django_db(transaction=True)
async def test_a_model_imported_without_mode_serves_what_it_is(tmp_path, fake_provider_url):
    path = tmp_path / "gateway.yaml"
    path.write_text(CONFIG.format(url=fake_provider_url))
    from asgiref.sync import sync_to_async

    await sync_to_async(call_command)("import_config", str(path), stdout=StringIO())
    modes = {m.alias: m.mode async for m in ProviderModel.objects.all()}
    assert modes == {"text-embedding-3-small": "embedding", "embeddings-by-name": "embedding",
                     "gpt-4o-mini": "chat", "chat-said": "chat"}  # a mode given is kept
    tenant = await sync_to_async(tenant_create)(slug="acme", name="Acme")
    _, raw_key = await sync_to_async(api_key_create)(tenant=tenant, name="default")
    response = await ApiClient().post(
        "/v1/embeddings", json.dumps({"model": "text-embedding-3-small", "input": "hello"}),
        content_type="application/json", headers={"Authorization": f"Bearer {raw_key}"},
    )
    assert response.status_code == 200, response.content
    assert response.json()["data"][0]["embedding"]


@pytest.mark.django_db
def test_the_admin_saves_and_shows_the_inferred_mode(admin_client):
    provider = Provider.objects.create(name="fake", type="openai", api_base="http://127.0.0.1:9/v1")
    response = admin_client.post("/admin/providers/providermodel/add/", {
        "provider": provider.pk, "alias": "embedder", "upstream_model": "text-embedding-3-small", "mode": "",
        "input_price_per_million": "0.02", "output_price_per_million": "0", "capabilities": "[]",
        "enabled": "on",
        "prices-TOTAL_FORMS": "0", "prices-INITIAL_FORMS": "0", "prices-MIN_NUM_FORMS": "0",
        "prices-MAX_NUM_FORMS": "1000",
    })
    assert response.status_code == 302, response.content.decode()[:2000]
    model = ProviderModel.objects.get(alias="embedder")
    assert model.mode == "embedding"
    page = admin_client.get("/admin/providers/providermodel/").content.decode()
    assert "Embeddings" in page
    change = admin_client.get(f"/admin/providers/providermodel/{model.pk}/change/").content.decode()
    assert 'value="embedding" selected' in change


@pytest.mark.django_db
def test_a_model_created_in_code_without_mode_is_inferred_and_an_explicit_one_kept():
    provider = Provider.objects.create(name="fake", type="openai", api_base="http://127.0.0.1:9/v1")
    inferred = ProviderModel.objects.create(provider=provider, alias="e", upstream_model="bge-embed-small")
    explicit = ProviderModel.objects.create(provider=provider, alias="c", upstream_model="x-embed", mode="chat")
    assert (inferred.mode, explicit.mode) == ("embedding", "chat")
