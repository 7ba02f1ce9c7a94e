"""Short captions and a small English word list used to build the tiny tokenizers and by demos."""

from __future__ import annotations

TINY_PROMPTS: list[str] = [
    "a red fox in the snow",
    "a photo of a cat sitting on a wooden chair",
    "an astronaut riding a horse on the moon",
    "a bowl of ramen with a soft boiled egg",
    "a lighthouse on a rocky cliff at sunset",
    "a watercolor painting of a quiet mountain lake",
    "a small robot reading a book in a library",
    "a city street at night in the rain, neon lights",
    "a portrait of an old man with a white beard",
    "a green frog on a lily pad, macro photo",
    "a castle in the clouds, fantasy art",
    "two dogs playing with a ball in the park",
    "a cup of coffee next to a laptop on a desk",
    "a sailing boat on a calm blue sea",
    "a field of sunflowers under a clear sky",
    "a cozy cabin in a snowy forest at dusk",
    "a close up of a blue butterfly on a flower",
    "an owl perched on a branch under the full moon",
    "a bright yellow taxi in a busy street",
    "a plate of pancakes with berries and honey",
]

# Generic words that refined prompts tend to use; they make random-weight decoding look word-like.
EXTRA_WORDS: list[str] = [
    "the", "a", "an", "of", "in", "on", "at", "with", "and", "or", "to", "from", "by", "for", "under",
    "over", "near", "behind", "next", "photo", "photograph", "painting", "drawing", "illustration",
    "render", "sketch", "portrait", "landscape", "detailed", "highly", "sharp", "focus", "soft", "light",
    "lighting", "cinematic", "dramatic", "golden", "hour", "vivid", "colorful", "muted", "pastel", "dark",
    "bright", "warm", "cool", "natural", "studio", "volumetric", "realistic", "photorealistic", "stylized",
    "anime", "oil", "watercolor", "digital", "art", "concept", "background", "foreground", "composition",
    "centered", "wide", "angle", "shot", "close", "up", "macro", "view", "high", "quality", "resolution",
    "masterpiece", "trending", "beautiful", "stunning", "intricate", "red", "orange", "yellow", "green",
    "blue", "purple", "pink", "white", "black", "gray", "brown", "gold", "silver", "small", "large", "tiny",
    "huge", "old", "young", "happy", "calm", "quiet", "busy", "misty", "foggy", "sunny", "rainy", "sky",
    "cloud", "sun", "moon", "star", "night", "day", "morning", "evening", "sunset", "sunrise", "snow",
    "rain", "tree", "forest", "flower", "grass", "river", "lake", "sea", "ocean", "mountain", "hill",
    "beach", "desert", "city", "house", "street", "road", "bridge", "tower", "castle", "room", "window",
    "door", "table", "chair", "book", "man", "woman", "child", "person", "people", "dog", "cat", "bird",
    "horse", "fox", "owl", "fish", "frog", "robot", "is", "are", "was", "has", "have", "it", "its", "this",
    "that", "there", "which", "very", "more", "most",
]
