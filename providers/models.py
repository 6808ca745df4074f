import math
from decimal import Decimal

from django.core.exceptions import ValidationError
from django.db import models

from kernel.upstream_urls import upstream_url_validate
from providers import crypto


def image_prices_validate(value: object) -> None:
    """{size: price} or {size: {quality: price}}, prices numbers of at least 0."""

    def price_ok(price: object) -> bool:
        return isinstance(price, (int, float)) and not isinstance(price, bool) and math.isfinite(price) and price >= 0

    if not isinstance(value, dict) or not all(
        price_ok(price) or (isinstance(price, dict) and price and all(price_ok(p) for p in price.values()))
        for price in value.values()
    ):
        raise ValidationError('Image prices map sizes to a price or to prices by quality, e.g. '
                              '{"1024x1024": {"standard": 0.04, "hd": 0.08}}.')


class Provider(models.Model):
    """An upstream LLM service reached through one wire format.

    `api_base` is what the vendor's official SDK takes as its base URL:
    `https://api.openai.com/v1` for OpenAI and OpenAI-compatible services,
    `https://api.anthropic.com` for Anthropic.
    """

    class WireType(models.TextChoices):
        OPENAI = "openai", "OpenAI-compatible"
        ANTHROPIC = "anthropic", "Anthropic Messages"
        GEMINI = "gemini", "Google Gemini"
        COHERE = "cohere", "Cohere v2"
        AZURE = "azure", "Azure OpenAI"
        TEI = "tei", "Hugging Face TEI (rerank, embeddings)"

    name = models.SlugField(max_length=64, unique=True)
    type = models.CharField(max_length=32, choices=WireType.choices, default=WireType.OPENAI)
    # Never a link-local or cloud metadata address (kernel/upstream_urls.py).
    api_base = models.URLField(max_length=500, validators=[upstream_url_validate])
    enabled = models.BooleanField(default=True)
    priority = models.IntegerField(
        default=100, help_text="Among providers serving the same alias, lower is tried first."
    )
    timeout_seconds = models.FloatField(
        null=True, blank=True, help_text="Read timeout for this provider; empty uses the default."
    )
    unsupported_params = models.JSONField(
        default=list, blank=True,
        help_text="Request parameters this provider does not accept, on top of the ones known "
        "for its service (see docs/providers.md).",
    )
    unsupported_param_policy = models.CharField(
        max_length=8, choices=[("drop", "Drop silently"), ("reject", "Reject with a 400")], default="drop",
        help_text="What to do with a parameter the provider does not accept.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["priority", "name"]

    def __str__(self) -> str:
        return self.name


class ProviderModel(models.Model):
    """A model a provider serves, under the alias clients send, with its prices."""

    class Mode(models.TextChoices):
        CHAT = "chat", "Chat completions"
        EMBEDDING = "embedding", "Embeddings"
        # A model that serves only OpenAI's legacy text completions (gpt-3.5-turbo-instruct,
        # davinci-002): `/v1/completions` is passed through to it, chat requests are refused.
        COMPLETION = "completion", "Text completions (legacy)"
        IMAGE = "image", "Image generation"
        TRANSCRIPTION = "transcription", "Audio transcription and translation"
        SPEECH = "speech", "Text to speech"
        MODERATION = "moderation", "Moderation"
        RERANK = "rerank", "Rerank"

    provider = models.ForeignKey(Provider, on_delete=models.CASCADE, related_name="models")
    alias = models.CharField(max_length=200, help_text="The model name clients send.")
    upstream_model = models.CharField(
        max_length=200, help_text="The model id sent to the provider."
    )
    mode = models.CharField(
        max_length=16, choices=Mode.choices, blank=True, default="",
        help_text="Empty: inferred when saved, from the price catalogue's entry for the upstream model, "
                  "else from the name ('embed': embedding, 'rerank', 'moderation', 'whisper' or "
                  "'transcribe': transcription, 'tts': speech, 'dall-e' or 'image': image), else chat.",
    )
    input_price_per_million = models.DecimalField(
        max_digits=12, decimal_places=6, default=Decimal("0")
    )
    output_price_per_million = models.DecimalField(
        max_digits=12, decimal_places=6, default=Decimal("0")
    )
    cached_input_price_per_million = models.DecimalField(
        max_digits=12, decimal_places=6, null=True, blank=True,
        help_text="Price of prompt tokens served from the provider's cache; empty: the input price.",
    )
    # Prices by the unit a provider bills besides tokens (docs/accounting.md); empty: not billed so.
    price_per_image = models.DecimalField(
        max_digits=12, decimal_places=6, null=True, blank=True,
        help_text="USD per generated image, for a size and quality not in image_prices.",
    )
    image_prices = models.JSONField(
        default=dict, blank=True, validators=[image_prices_validate],
        help_text='USD per image by size and quality, e.g. {"1024x1024": {"standard": 0.04, "hd": 0.08}}.',
    )
    price_per_audio_minute = models.DecimalField(
        max_digits=12, decimal_places=6, null=True, blank=True, help_text="USD per minute of transcribed audio."
    )
    price_per_million_characters = models.DecimalField(
        max_digits=12, decimal_places=6, null=True, blank=True, help_text="USD per million characters spoken."
    )
    price_per_thousand_searches = models.DecimalField(
        max_digits=12, decimal_places=6, null=True, blank=True,
        help_text="USD per thousand searches (a rerank of up to 100 documents is one search).",
    )
    context_window = models.PositiveIntegerField(null=True, blank=True)
    max_output_tokens = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Output cap; the Anthropic adapter sends it when the client gives no max_tokens.",
    )
    capabilities = models.JSONField(
        default=list, blank=True, help_text='e.g. ["streaming", "tools", "vision"]'
    )
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["alias", "provider__name"]
        constraints = [
            models.UniqueConstraint(fields=["provider", "alias"], name="uniq_provider_alias")
        ]

    def __str__(self) -> str:
        return f"{self.provider.name}:{self.alias}"


class ProviderKey(models.Model):
    """A provider credential, encrypted at rest with the gateway's MultiFernet keys.

    The plaintext is never shown again after it is saved: the admin only writes it, exports leave
    it out, and `__str__`/`repr` never include it.
    """

    provider = models.ForeignKey(Provider, on_delete=models.CASCADE, related_name="keys")
    name = models.CharField(max_length=100, default="default")
    encrypted_secret = models.TextField(editable=False)
    source = models.CharField(
        max_length=200,
        blank=True,
        help_text="Where the secret came from, e.g. env:OPENAI_API_KEY (never the secret).",
    )
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["provider__name", "name"]
        constraints = [
            models.UniqueConstraint(fields=["provider", "name"], name="uniq_provider_key_name")
        ]

    def __str__(self) -> str:
        return f"{self.provider.name}/{self.name}"

    def set_secret(self, secret: str) -> None:
        self.encrypted_secret = crypto.encrypt(secret)

    def get_secret(self) -> str:
        return crypto.decrypt(self.encrypted_secret)


class ModelPrice(models.Model):
    """A provider model's prices from a point in time on (USD per million tokens).

    The price in force for a request is the latest whose `effective_from` is not after the
    request; without any, the model's own price fields apply. A change therefore never rewrites
    the cost of requests already made, and a future change can be scheduled.
    """

    provider_model = models.ForeignKey(ProviderModel, on_delete=models.CASCADE, related_name="prices")
    effective_from = models.DateTimeField()
    input_price_per_million = models.DecimalField(max_digits=12, decimal_places=6)
    output_price_per_million = models.DecimalField(max_digits=12, decimal_places=6)
    cached_input_price_per_million = models.DecimalField(
        max_digits=12, decimal_places=6, null=True, blank=True,
        help_text="Price of prompt tokens served from the provider's cache; empty: the input price.",
    )
    # Prices by the unit a provider bills besides tokens (docs/accounting.md); empty: not billed so.
    price_per_image = models.DecimalField(
        max_digits=12, decimal_places=6, null=True, blank=True,
        help_text="USD per generated image, for a size and quality not in image_prices.",
    )
    image_prices = models.JSONField(
        default=dict, blank=True, validators=[image_prices_validate],
        help_text='USD per image by size and quality, e.g. {"1024x1024": {"standard": 0.04, "hd": 0.08}}.',
    )
    price_per_audio_minute = models.DecimalField(
        max_digits=12, decimal_places=6, null=True, blank=True, help_text="USD per minute of transcribed audio."
    )
    price_per_million_characters = models.DecimalField(
        max_digits=12, decimal_places=6, null=True, blank=True, help_text="USD per million characters spoken."
    )
    price_per_thousand_searches = models.DecimalField(
        max_digits=12, decimal_places=6, null=True, blank=True,
        help_text="USD per thousand searches (a rerank of up to 100 documents is one search).",
    )
    source = models.CharField(max_length=32, default="admin", help_text="admin, catalogue or import.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["provider_model", "-effective_from"]
        constraints = [
            models.UniqueConstraint(fields=["provider_model", "effective_from"], name="uniq_model_price_time")
        ]

    def __str__(self) -> str:
        return f"{self.provider_model} from {self.effective_from:%Y-%m-%d %H:%M}"
