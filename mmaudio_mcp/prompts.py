"""MCP prompts that help a model write requests MMAudio handles well.

MMAudio reads the prompt through a CLIP text encoder that keeps 77 tokens (about 50-60 words), was trained on
8-second clips of real-world sound (VGGSound and similar), and follows concrete sound sources, materials, actions
and acoustic spaces far better than moods or music theory.
"""

from __future__ import annotations

from typing import Annotated, Final

from pydantic import Field

from mmaudio_mcp.models import Duration

_RULES: Final = """Rules for MMAudio v2 prompts:
- One short sentence, under 40 words: the sound source, what it does, the material, the space (e.g. "heavy wooden \
door creaks open slowly in a stone hallway, reverberant").
- Concrete and audible only: no moods, no story, no visual details, no brand names; put the essentials first \
(only about the first 60 words are read).
- Use negative_prompt for what must not be heard, e.g. "music, speech, voices, distortion, low quality".
- Keep num_steps 25 and cfg_strength 4.5 unless the result is muddy (raise cfg_strength to 6) or too literal \
(lower it to 3.5). There is no seed: ask for a second take if the first misses."""


Subject = Annotated[str, Field(min_length=1, description="The sound effect wanted, e.g. 'a heavy door slams'.")]
Context = Annotated[str, Field(description="Where it will be used, e.g. 'a horror game, stone corridor'.")]
Place = Annotated[str, Field(min_length=1, description="The place to hear, e.g. 'a harbour at dawn'.")]
MoodHint = Annotated[str, Field(description="A feeling to translate into audible sources, e.g. 'lonely'.")]
EffectSeconds = Annotated[Duration, Field(description="Clip length in seconds (2-30; effects: 2-4).")]
AmbienceSeconds = Annotated[Duration, Field(description="Clip length in seconds (2-30; ambience: 10-30).")]


def sound_effect(subject: Subject, context: Context = "", duration: EffectSeconds = 2) -> str:
    """Ask for one sound effect, written the way MMAudio understands best."""
    where = f" It will be used in: {context}." if context else ""
    return (
        f"Write a generate_audio call for a short sound effect: {subject}.{where}\n\n{_RULES}\n"
        f"- A single event: describe its attack and decay (e.g. 'sharp', 'dull thud', 'long metallic ring').\n\n"
        f"Use duration={duration} (effects are usually 1-4 s; the minimum is 2), then call generate_audio. "
        "If it returns a request_id instead of a file, call check_status with it; never generate twice for one "
        "request, each call is paid."
    )


def ambience(place: Place, mood_hint: MoodHint = "", duration: AmbienceSeconds = 15) -> str:
    """Ask for a background ambience bed, written the way MMAudio understands best."""
    hint = (
        f" The scene should feel {mood_hint}; translate that into audible sources, not adjectives." if mood_hint else ""
    )
    return (
        f"Write a generate_audio call for a continuous ambience of: {place}.{hint}\n\n{_RULES}\n"
        "- List two or three layered sources at different distances (e.g. 'steady rain on leaves, distant thunder, "
        "occasional dripping nearby'); avoid single events that would stand out.\n"
        '- Add "music, speech, voices" to negative_prompt.\n\n'
        f"Use duration={duration} (ambience can be up to 30 s; the model was trained on 8 s clips, so longer takes "
        "may drift), then call generate_audio. If it returns a request_id, call check_status with it."
    )


__all__ = ["ambience", "sound_effect"]
