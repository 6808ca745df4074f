from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('providers', '0008_unit_prices'),
    ]

    operations = [
        migrations.AlterField(
            model_name='provider',
            name='type',
            field=models.CharField(choices=[('openai', 'OpenAI-compatible'), ('anthropic', 'Anthropic Messages'), ('gemini', 'Google Gemini'), ('cohere', 'Cohere v2'), ('azure', 'Azure OpenAI'), ('tei', 'Hugging Face TEI (rerank, embeddings)')], default='openai', max_length=32),
        ),
    ]
