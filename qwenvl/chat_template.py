"""ChatML rendering without transformers: the checkpoint's Jinja `chat_template` in a sandbox with the settings
transformers uses, or an equivalent built-in template (reference.md §8.1)."""
from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache

# Our own template with the documented behaviour: default system turn, vision placeholders per part (by type or
# by key), optional "Picture N: " / "Video N: " ids, no newlines around vision tags, generation prompt.
DEFAULT_CHAT_TEMPLATE = (
    "{%- set image_count = namespace(value=0) -%}"
    "{%- set video_count = namespace(value=0) -%}"
    "{%- for message in messages -%}"
    "{%- if loop.first and message['role'] != 'system' -%}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string -%}"
    "{{ message['content'] + '<|im_end|>\\n' }}"
    "{%- else -%}"
    "{%- for content in message['content'] -%}"
    "{%- if content['type'] == 'image' or 'image' in content or 'image_url' in content -%}"
    "{%- set image_count.value = image_count.value + 1 -%}"
    "{%- if add_vision_id -%}{{ 'Picture ' + image_count.value|string + ': ' }}{%- endif -%}"
    "{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif content['type'] == 'video' or 'video' in content -%}"
    "{%- set video_count.value = video_count.value + 1 -%}"
    "{%- if add_vision_id -%}{{ 'Video ' + video_count.value|string + ': ' }}{%- endif -%}"
    "{{ '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{%- elif 'text' in content -%}"
    "{{ content['text'] }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{{ '<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{ '<|im_start|>assistant\\n' }}"
    "{%- endif -%}"
)


class TemplateError(ValueError):
    pass


@lru_cache(maxsize=8)
def _compile(source: str):
    from jinja2 import TemplateSyntaxError
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise TemplateError(f"chat template refused the conversation: {message}")

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except TemplateSyntaxError as e:
        raise TemplateError(f"the chat template does not parse: {e}") from None


def render(messages: list[dict], template: str | None = None, *, add_generation_prompt: bool = True,
           add_vision_id: bool = False, **kwargs) -> str:
    """The prompt text of one conversation (vision parts as single placeholders, expanded later)."""
    tpl = _compile(template or DEFAULT_CHAT_TEMPLATE)
    return tpl.render(messages=messages, add_generation_prompt=add_generation_prompt, add_vision_id=add_vision_id,
                      **kwargs)
