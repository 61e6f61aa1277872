"""The parser's word lists: FACTUAL's annotation conventions and spaCy small-model fixes, as data.

Each list is a closed set of English words the rules in :mod:`miner.parser` consult; changing a
list changes which captions a rule fires on, never how the rule works.  ``META_NOUNS`` names what a
caption says about the picture rather than the scene ("a photo of a dog", "aerial view of a bay"):
the parser drops them from graphs unless told not to (``SceneGraphParser(drop_meta_nouns=False)``).
"""

from __future__ import annotations

NUMBER_WORDS: dict[str, str] = {
    "two": "2", "three": "3", "four": "4", "five": "5", "six": "6", "seven": "7",
    "eight": "8", "nine": "9", "ten": "10", "eleven": "11", "twelve": "12",
    "thirteen": "13", "fourteen": "14", "fifteen": "15", "sixteen": "16",
    "seventeen": "17", "eighteen": "18", "nineteen": "19", "twenty": "20",
    "dozen": "12", "both": "2",
}
# FACTUAL never annotates a count of one.
SKIPPED_NUMBERS = frozenset({"one", "1", "a", "an"})

COLOURS = frozenset({
    "white", "black", "red", "blue", "green", "yellow", "orange", "brown", "grey",
    "gray", "pink", "purple", "silver", "gold", "golden", "tan", "beige", "dark",
    "maroon", "navy", "teal", "turquoise", "violet", "cream", "khaki", "colorful",
})

# Noun compounds FACTUAL annotates as attributes: "metal fence" -> fence is metal.
ATTRIBUTE_COMPOUNDS = frozenset({
    "metal", "brick", "stone", "glass", "cement", "concrete", "leather", "plastic",
    "iron", "rock", "steel", "porcelain", "chrome", "straw", "wax", "rubber", "ceramic",
    "marble", "granite", "wicker", "copper", "aluminum", "aluminium", "denim", "wool",
    "bamboo", "tin", "pine", "oak", "plaid", "baby", "adult", "mother", "wii",
    "computer", "laptop",
})
# Adjectives FACTUAL keeps inside the name: "left ear", "hot dog", "living room".
NAME_ADJECTIVES = frozenset({
    "left", "right", "front", "back", "rear", "upper", "lower", "hot", "living",
    "polar", "remote", "french", "cutting", "chopping", "skate", "ski", "semi", "dining",
})
# Quantifiers FACTUAL does not annotate as attributes.
QUANTIFIERS = frozenset({
    "many", "several", "few", "numerous", "various", "some", "multiple", "other",
    "another", "much", "more", "most", "lots", "couple", "each", "every", "all", "same",
})
# Preposition spellings FACTUAL normalises: "beneath" -> "under".
PREP_SYNONYMS: dict[str, str] = {
    "beneath": "under", "underneath": "under", "below": "under", "in between": "between",
    "inside of": "inside", "atop": "on top of", "in middle of": "on middle of",
    "in the middle of": "on middle of", "on to": "onto",
}
# "a plate of food" -> (food, on, plate); "a glass of wine" -> (wine, in, glass).
CONTAINERS: dict[str, str] = {
    "plate": "on", "tray": "on", "platter": "on", "glass": "in", "bottle": "in",
    "box": "in", "cup": "in", "bowl": "in", "basket": "in", "bag": "in", "jar": "in",
    "mug": "in", "picture": "in", "photo": "in", "carton": "in", "bucket": "in",
    "container": "in", "can": "in", "pot": "in", "vase": "in", "crate": "in",
}

SHADES = frozenset({"dark", "light", "bright", "pale", "deep", "navy", "lime", "hot", "sky", "royal"})

# "a group of kids" -> kids is "group of"; "a bunch of bananas" -> bananas.
QUANTITY_ATTRIBUTE: dict[str, str] = {"group": "group of", "piece": "piece", "slice": "slice"}
QUANTITY_NOUNS = frozenset({
    "bunch", "lot", "lots", "pair", "row", "herd", "couple", "set", "stack", "pile",
    "flock", "number", "variety", "bundle", "collection", "assortment", "handful",
    "cluster", "bouquet", "crowd", "array", "series", "plenty", "kind", "type", "sort",
    "school", "swarm", "pack", "team", "line", "few", "bit", "bits", "chunk",
    "chunks", "heap", "mass", "patch", "rows", "sets", "pairs", "bunches",
    *QUANTITY_ATTRIBUTE,
})
# "on the top of the pole" -> predicate "on top of".
RELATIONAL_NOUNS = frozenset({
    "top", "side", "sides", "front", "back", "middle", "bottom", "edge", "center",
    "centre", "corner", "end", "face", "rear", "left", "right", "surface",
})
RELATIONAL_MODIFIERS = frozenset({"left", "right", "both", "either", "far", "other"})
# Adverbs / adjectives that head a complex preposition: "next to", "out of".
PREP_HEADS = frozenset({"next", "close", "out", "away", "off", "ahead", "inside", "outside"})

CLOTHING = frozenset({
    "shirt", "t-shirt", "tshirt", "jacket", "coat", "hat", "cap", "helmet", "glass",
    "glasses", "sunglass", "sunglasses", "goggle", "goggles", "jean", "jeans", "pant",
    "pants", "short", "shorts", "dress", "skirt", "suit", "tie", "scarf", "glove",
    "gloves", "shoe", "boot", "sneaker", "sock", "uniform", "sweater", "hoodie",
    "sweatshirt", "vest", "outfit", "clothes", "clothing", "costume", "blouse",
    "apron", "wetsuit", "jersey", "bikini", "swimsuit", "trunk", "headband",
    "wristband", "visor", "beanie", "hood", "mask", "necklace", "earring",
    "bracelet", "belt", "robe", "gown", "overall", "overalls", "legging", "tights",
    "sandal", "slipper", "heel", "cleat", "mitten", "bandana", "backpack", "top",
    "tank", "hoody", "sweatpant", "sweatpants", "trouser", "trousers", "bandanna",
})
# Compound heads FACTUAL splits into part-whole: "tree branch" -> (tree, have, branch).
SPLIT_PARTS = frozenset({"branch", "head", "face", "tail", "mouth", "eye", "nose", "blade"})
# "X with Y": FACTUAL mostly keeps "with"; these objects switch to "wear" / "have".
WITH_WEAR = frozenset({"shirt", "glass", "glasses", "sunglass", "sunglasses", "goggle", "goggles"})
WITH_HAVE = frozenset({"hand", "face", "nose", "ear", "mouth", "beak"})
PERSON_WORDS = frozenset({"someone", "somebody", "anyone", "anybody"})
RELATIVE_PRONOUNS = frozenset({"who", "that", "which", "whom", "whose"})
# Small-model lemma errors and FACTUAL verb conventions.
VERB_LEMMA_FIXES: dict[str, str] = {
    "rid": "ride", "lie": "lay", "lying": "lay", "laying": "lay", "layed": "lay",
    "skiing": "ski", "surfing": "surf", "skateboarding": "skateboard",
}

NOUN_LEMMA_FIXES: dict[str, str] = {"clothe": "clothes", "jean": "jeans", "pant": "pants"}

# Passive participles FACTUAL reverses: "trees covered in snow" -> (snow, cover, trees).
REVERSED_PASSIVES = frozenset({"cover"})
# Particles dropped before a preposition: "sit down in chair" -> "sit in".
DROPPED_PARTICLES = frozenset({"down", "up"})

# Nouns in -ing that are not gerunds.
ING_NOUNS = frozenset({
    "building", "ceiling", "painting", "clothing", "railing", "awning", "icing",
    "topping", "sibling", "evening", "morning", "lighting", "wedding", "frosting",
    "stuffing", "opening", "string", "thing", "spring", "swing", "ring", "wing", "king",
    "sling", "siding", "housing", "parking", "crossing", "filling", "pudding",
    "dumpling", "seating", "carving", "drawing", "bedding", "shading", "flooring",
    "netting", "fencing", "tiling", "trimming", "wiring", "molding", "moulding",
    "ending", "lettering", "marking", "covering", "decking", "setting", "stocking",
    "earring", "carpeting", "paneling", "panelling", "writing", "dressing", "heading",
    "landing", "offering", "sightseeing", "stitching", "plumbing", "packaging", "ping",
})
# Stems that take back an "e": "riding" -> "ride".
E_STEMS = frozenset({
    "rid", "hik", "graz", "skat", "mak", "tak", "com", "hav", "driv", "danc", "rac",
    "glid", "smil", "pos", "div", "wav", "serv", "slid", "shin", "bak", "us", "leav",
    "mov", "hid", "writ", "pil", "lin", "fac", "plac", "chas", "car", "clos", "shar",
})

# Prepositions that can be left stranded at the end of a relative clause.
STRANDABLE = frozenset({
    "on", "in", "under", "at", "near", "by", "behind", "over", "inside", "beside",
    "with", "against", "above", "into", "onto", "through", "across", "around", "from",
})

# Nouns that describe the picture, not the scene ("stock photo of ...", "vector illustration of ...",
# "aerial view of ...", "close-up of ...").  Heads only: an entity is meta when its head noun (the
# last word of its name, singular or plural) is listed, so "stock photo" is covered by "photo" and
# "photo frame" (head "frame") is not.  With meta nouns dropped, "a photo of a dog" has the one entity
# "dog": a meta noun with an "of" object stands for that object (like "a bunch of bananas"), any other
# meta mention is not an entity, and its attributes and relations ("dog in photo") go with it.
# Deliberately left out, being real objects as often as framing: painting, drawing, poster, art,
# cartoon, sketch, logo, scene.
META_NOUNS = frozenset({
    "photo", "photograph", "picture", "pic", "image", "illustration", "view", "vector", "portrait",
    "shot", "snapshot", "closeup", "close-up", "selfie", "screenshot", "footage",
})
