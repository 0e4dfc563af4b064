"""The words the rules planner knows: story verbs → actions real footage shows, beings → bodies that move
alike, objects, settings.

Retrieval searches real footage (Kinetics-style human actions, some animals), so a planned motion query
names a real body doing an everyday action: "the hare sprints" → ``a dog running``; "an elf plays with a
butterfly" → ``a child chasing a butterfly``. The tables here are written from general knowledge of story
verbs and of Kinetics-400's action classes, not fitted to any test sentence.

* :data:`ACTIONS`: verb lemmas → :class:`Action` (the query phrase, how visible the motion is, whether it
  needs hands, whether it moves the body somewhere, and phrases for the objects it takes).
* :func:`verb_lemma`: an inflected word → its lemma in the table (snowball stems plus irregular forms).
* :data:`BEINGS`: animals, fantasy beings and people → :class:`Being` (the stand-in body for retrieval).
* :data:`OBJECTS`: object nouns → (class, generic noun phrase); :data:`SETTINGS`: place nouns → :class:`Place`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import snowballstemmer

_STEMMER = snowballstemmer.stemmer("english")


def stem(word: str) -> str:
    return _STEMMER.stemWord(word.lower())


# -- actions -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Action:
    """What a verb looks like in real footage."""

    phrase: str
    """The query phrase with no object: ``running``, ``climbing``."""
    strength: int
    """How visible the motion is: 3 the whole body moves, 2 a clear movement, 1 a small one, 0 none."""
    hands: bool = False
    """Needs human hands: an animal stand-in body becomes a person (no dog plays a guitar)."""
    moves: bool = False
    """Moves the body somewhere: takes a speed (slowly) and a path (across a field)."""
    objects: tuple[tuple[str, str], ...] = ()
    """Object class → query phrase, ``{obj}`` the object's generic noun phrase (see :data:`OBJECTS`)."""
    bodies: tuple[tuple[str, str], ...] = ()
    """Stand-in body → phrase where a body does it its own way (a bird flying, a horse galloping)."""

    def phrase_for(self, object_class: str | None, object_phrase: str | None) -> str:
        for name, template in self.objects:
            if name == object_class or (name == "*" and object_class is not None):
                return template.format(obj=object_phrase or "")
        return self.phrase


def _action(verbs: str, phrase: str, strength: int, *, hands: bool = False, moves: bool = False,
            objects: dict[str, str] | None = None, bodies: dict[str, str] | None = None) -> tuple[tuple[str, ...],
                                                                                                  Action]:
    return tuple(verbs.split()), Action(phrase, strength, hands, moves, tuple((objects or {}).items()),
                                        tuple((bodies or {}).items()))


_ACTION_TABLE = [
    # moving over ground
    _action("run sprint dash race rush hurry scamper scurry bolt flee charge speed dart zoom career hasten scramble",
            "running", 3, moves=True, bodies={"a horse": "galloping"}),
    _action("gallop", "galloping", 3, moves=True),
    _action("jog trot lope", "jogging", 3, moves=True, bodies={"a horse": "trotting", "a dog": "trotting"}),
    _action("walk stroll wander amble stride roam saunter hike pace tread step journey travel trek ramble",
            "walking", 2, moves=True),
    _action("plod trudge shuffle creep tiptoe totter toddle waddle limp hobble lumber", "walking slowly", 2,
            moves=True),
    _action("march parade", "marching", 3, moves=True),
    _action("cross ford", "walking across", 2, moves=True,
            objects={"water": "crossing a river", "bridge": "walking across a bridge", "road": "crossing a road"}),
    _action("go come head move set arrive return approach leave enter depart advance proceed follow pass",
            "walking", 1, moves=True),
    _action("chase pursue hunt stalk", "chasing", 3, moves=True, objects={"*": "chasing {obj}"}),
    _action("crawl slither wriggle", "crawling", 2, moves=True),
    _action("hop skip bound", "hopping", 3, moves=True),
    _action("jump leap spring pounce vault bounce hurdle", "jumping", 3,
            objects={"water": "jumping into water", "wall": "jumping over a wall", "rope": "skipping rope"}),
    _action("climb scale clamber ascend", "climbing", 3, objects={
        "tree": "climbing a tree", "ladder": "climbing a ladder", "rope": "climbing a rope",
        "rock": "rock climbing", "wall": "climbing a wall", "stairs": "climbing stairs", "hill": "climbing a hill"}),
    _action("swim paddle wade", "swimming", 3, moves=True, objects={"boat": "paddling a canoe"}),
    _action("dive plunge", "diving", 3, objects={"water": "diving into water"}),
    _action("fly soar glide flutter flap hover swoop", "flying", 3, moves=True),
    _action("fall stumble trip tumble topple collapse slip", "falling down", 3),
    _action("roll", "rolling on the ground", 2),
    _action("somersault cartwheel flip", "doing a cartwheel", 3),
    _action("spin twirl whirl pirouette", "spinning around", 3),
    _action("dance waltz jig prance caper", "dancing", 3),
    _action("skate", "ice skating", 3, moves=True),
    _action("ski", "skiing", 3, moves=True),
    _action("sled sledge toboggan", "tobogganing", 3, moves=True),
    _action("surf", "surfing", 3),
    _action("ride", "riding a horse", 3, moves=True, objects={
        "horse": "riding a horse", "bike": "riding a bike", "camel": "riding a camel",
        "elephant": "riding an elephant", "mule": "riding a mule", "boat": "sailing a boat",
        "scooter": "riding a scooter", "cart": "driving a cart"}),
    _action("row", "rowing a boat", 3, hands=True),
    _action("sail", "sailing a boat", 2),
    _action("drive steer", "driving a car", 2, hands=True,
            objects={"cart": "driving a cart", "tractor": "driving a tractor"}),
    # body, hands and gestures
    _action("wave beckon", "waving", 3, hands=True),
    _action("clap applaud", "clapping", 3, hands=True),
    _action("cheer celebrate rejoice", "cheering", 3),
    _action("bow curtsy", "bowing", 2),
    _action("hug embrace cuddle", "hugging", 3, hands=True),
    _action("kiss", "kissing", 2),
    _action("kick", "kicking", 3, objects={"ball": "kicking a ball", "door": "kicking a door"}),
    _action("punch box", "punching", 3, hands=True),
    _action("hit strike smash whack slap", "hitting", 3, hands=True,
            objects={"ball": "hitting a ball", "drum": "playing drums"}),
    _action("fight battle duel brawl", "fighting", 3, objects={"sword": "sword fighting"}),
    _action("fence", "sword fighting", 3, hands=True),
    _action("wrestle grapple tussle", "wrestling", 3),
    _action("throw toss hurl fling pitch lob", "throwing", 3, hands=True, objects={
        "ball": "throwing a ball", "stone": "throwing a stone", "axe": "throwing an axe",
        "spear": "throwing a javelin", "disc": "throwing a frisbee", "snow": "throwing a snowball",
        "coin": "tossing a coin"}),
    _action("catch", "catching a ball", 3, hands=True, objects={"disc": "catching a frisbee", "fish": "catching fish"}),
    _action("juggle", "juggling balls", 3, hands=True),
    _action("swing brandish wield", "swinging", 3, hands=True,
            objects={"sword": "swinging a sword", "axe": "swinging an axe", "rope": "swinging on a rope"}),
    _action("shoot aim", "shooting an arrow", 3, hands=True, objects={"bow": "archery", "ball": "shooting a ball"}),
    _action("carry haul lug bear", "carrying", 2, hands=True,
            objects={"baby": "carrying a baby", "*": "carrying {obj}"}),
    _action("lift raise heave hoist", "lifting", 2, hands=True, objects={"*": "lifting {obj}"}),
    _action("push shove", "pushing", 3, hands=True, objects={
        "cart": "pushing a cart", "car": "pushing a car", "*": "pushing {obj}"}),
    _action("pull drag tug", "pulling", 3, hands=True, objects={"rope": "pulling a rope", "*": "pulling {obj}"}),
    _action("dig burrow shovel", "digging", 3, objects={"snow": "shoveling snow"}),
    _action("chop hew split", "chopping wood", 3, hands=True),
    _action("saw", "sawing wood", 3, hands=True),
    _action("hammer", "hammering", 3, hands=True),
    _action("build", "building", 2, hands=True, objects={"snow": "making a snowman", "wall": "laying bricks"}),
    _action("sweep", "sweeping the floor", 2, hands=True),
    _action("mop scrub clean polish", "cleaning", 2, hands=True, objects={"window": "cleaning windows"}),
    _action("wash bathe", "washing", 2, hands=True, objects={"dish": "washing dishes", "hair": "washing hair"}),
    _action("knock", "knocking on a door", 2, hands=True),
    _action("open", "opening a door", 1, hands=True, objects={"box": "opening a box", "door": "opening a door",
                                                               "gift": "opening a present"}),
    _action("close shut", "closing a door", 1, hands=True),
    _action("stretch", "stretching", 2),
    _action("reach grab seize snatch grasp", "reaching up", 2, objects={"fruit": "reaching for fruit"}),
    _action("stomp stamp", "stomping", 2),
    _action("kneel crouch squat stoop", "kneeling down", 2),
    _action("sit", "sitting down", 1),
    _action("stand rise", "standing up", 1),
    _action("wake awaken", "waking up", 1),
    _action("shake shiver tremble quiver", "shaking", 1),
    _action("nod", "nodding", 1),
    _action("point gesture", "pointing", 1, hands=True),
    _action("shrug", "shrugging", 1),
    # food, plants, animals
    _action("eat nibble munch gobble devour feast chew bite graze", "eating", 2, objects={
        "fruit": "eating fruit", "cake": "eating cake", "bread": "eating bread", "carrot": "eating carrots"}),
    _action("drink sip gulp lap", "drinking", 2, objects={"water": "drinking water"}),
    _action("cook bake fry stir roast", "cooking", 2, hands=True, objects={"cake": "baking a cake"}),
    _action("pick gather pluck harvest collect forage", "picking fruit", 2, hands=True,
            objects={"flower": "picking flowers", "wood": "gathering wood", "fruit": "picking fruit",
                     "grain": "harvesting grain"}),
    _action("plant sow", "planting a tree", 2, hands=True, objects={"grain": "sowing seeds"}),
    _action("water", "watering plants", 2, hands=True),
    _action("pour", "pouring water", 2, hands=True),
    _action("feed", "feeding", 2, hands=True, objects={"bird": "feeding birds", "fish": "feeding fish",
                                                        "goat": "feeding goats", "*": "feeding {obj}"}),
    _action("pet stroke pat", "petting an animal", 2, hands=True, objects={"cat": "petting a cat",
                                                                          "*": "petting {obj}"}),
    _action("groom brush comb", "brushing", 2, hands=True, objects={"horse": "grooming a horse",
                                                                     "dog": "grooming a dog", "hair": "brushing hair"}),
    _action("fish angle", "fishing", 2, hands=True),
    _action("milk", "milking a cow", 2, hands=True),
    _action("sniff smell", "sniffing", 1),
    _action("bark howl growl", "barking", 1),
    _action("peck", "pecking", 1),
    _action("wag", "wagging its tail", 1),
    # music, play, faces
    _action("play", "playing", 2, objects={
        "instrument": "playing {obj}", "ball": "playing with a ball", "cards": "playing cards",
        "chess": "playing chess", "creature": "chasing {obj}", "kite": "flying a kite"}),
    _action("strum", "playing guitar", 2, hands=True),
    _action("drum", "playing drums", 3, hands=True),
    _action("fiddle", "playing violin", 2, hands=True),
    _action("pipe", "playing flute", 2, hands=True),
    _action("sing chant hum serenade", "singing", 2),
    _action("whistle", "whistling", 1),
    _action("laugh giggle chuckle", "laughing", 1),
    _action("cry weep sob wail", "crying", 1),
    _action("smile grin", "smiling", 1),
    _action("yawn", "yawning", 1),
    _action("sneeze", "sneezing", 1),
    _action("read", "reading a book", 1, hands=True, objects={"letter": "reading a letter"}),
    _action("write", "writing", 1, hands=True),
    _action("draw paint sketch", "drawing", 1, hands=True),
    _action("knit sew weave spin", "knitting", 1, hands=True),
    _action("sleep nap doze snooze slumber rest lie", "sleeping", 1),
    _action("hide", "hiding", 1),
    _action("search seek", "looking around", 1),
    _action("look watch stare gaze peer glance see spot notice", "looking around", 0),
    _action("say tell ask reply answer shout call speak talk whisper boast brag mock tease taunt scold argue "
            "challenge declare exclaim mutter promise warn", "talking", 0),
    _action("wait listen think wonder decide", "standing still", 0),
]

ACTIONS: dict[str, Action] = {}
"""Verb lemma → :class:`Action`."""
for _verbs, _meaning in _ACTION_TABLE:
    for _verb in _verbs:
        ACTIONS.setdefault(_verb, _meaning)

# Irregular forms → lemma (regular forms are found through their snowball stems).
IRREGULAR = {
    "ran": "run", "swam": "swim", "swum": "swim", "rode": "ride", "ridden": "ride", "threw": "throw",
    "thrown": "throw", "flew": "fly", "flown": "fly", "leapt": "leap", "sprang": "spring", "sprung": "spring",
    "fell": "fall", "fallen": "fall", "caught": "catch", "dove": "dive", "drew": "draw", "drawn": "draw",
    "ate": "eat", "eaten": "eat", "drank": "drink", "drunk": "drink", "went": "go", "gone": "go",
    "came": "come", "sat": "sit", "stood": "stand", "took": "take", "hid": "hide", "hidden": "hide",
    "shook": "shake", "shaken": "shake", "struck": "strike", "wept": "weep", "slept": "sleep", "crept": "creep",
    "knelt": "kneel", "spun": "spin", "swung": "swing", "dug": "dig", "fought": "fight", "woke": "wake",
    "woken": "wake", "rose": "rise", "risen": "rise", "blew": "blow", "built": "build", "wrote": "write",
    "written": "write", "sang": "sing", "sung": "sing", "slid": "slide", "strode": "stride", "swept": "sweep",
    "tore": "tear", "wove": "weave", "fled": "flee", "fed": "feed", "led": "lead", "left": "leave",
    "saw": "see", "seen": "see", "said": "say", "told": "tell", "thought": "think", "bore": "bear",
    "clung": "cling", "flung": "fling", "bit": "bite", "bitten": "bite", "lay": "lie", "lain": "lie",
    "hung": "hang", "stole": "steal", "froze": "freeze", "shot": "shoot", "sought": "seek", "trod": "tread",
    "trodden": "tread", "did": "do", "made": "make", "got": "get", "found": "find", "held": "hold",
    "brought": "bring", "kept": "keep", "began": "begin", "begun": "begin", "sped": "speed", "set": "set",
    "hit": "hit", "cut": "cut", "shut": "shut", "spat": "spit", "spilt": "spill", "lit": "light",
}

# Words that look like verbs in the table but are almost always something else in a story.
NOT_VERBS = frozenset({"spring", "fall", "rest", "set", "left", "saw", "bear", "lay", "rose", "bit", "shot",
                       "fell", "lit", "box", "ski", "fence", "pitch", "drum", "pipe", "fiddle", "water", "angle",
                       "milk", "fish", "plant", "cross", "point", "stamp", "wave", "race", "step", "bow"})
"""These are taken as verbs only where the context says so: after a subject, a pronoun, ``to``, or as an
``-ing``/``-ed``/``-s`` form (``the hare races``); a bare ``fish`` or ``spring`` is a noun."""


@lru_cache(maxsize=4096)
def verb_lemma(word: str) -> str | None:
    """The lemma of ``word`` in :data:`ACTIONS` (``sprints`` → ``sprint``, ``ran`` → ``run``), or None."""
    lower = word.lower().replace("\u2019", "'")
    if lower in IRREGULAR:
        lemma = IRREGULAR[lower]
        return lemma if lemma in ACTIONS else None
    if lower in ACTIONS:
        return lower
    return _STEM_TO_LEMMA.get(stem(lower))


_STEM_TO_LEMMA: dict[str, str] = {}
for _lemma in ACTIONS:
    _STEM_TO_LEMMA.setdefault(stem(_lemma), _lemma)


_NO_DOUBLING = frozenset({"visit", "open", "gallop", "travel", "wander", "shiver", "quiver", "hover", "enter",
                          "answer", "whisper", "mutter", "listen", "hasten", "happen", "limp", "gather"})
_DOUBLING = frozenset({"begin", "admit", "forget", "regret", "patrol", "control", "equip"})


def gerund(lemma: str) -> str:
    """``run`` → ``running``, ``dance`` → ``dancing``, ``lie`` → ``lying``, ``sprint`` → ``sprinting``."""
    if lemma.endswith("ie"):
        return lemma[:-2] + "ying"
    if lemma in ("be", "see", "flee", "ski", "agree") or lemma.endswith("ee"):
        return lemma + "ing"
    if lemma.endswith("e") and len(lemma) > 2:
        return lemma[:-1] + "ing"
    vowels = "aeiou"
    doubles = lemma in _DOUBLING or (
        lemma not in _NO_DOUBLING and len(lemma) >= 3 and lemma[-1] not in vowels + "wxy"
        and lemma[-2] in vowels and lemma[-3] not in vowels
        and sum(1 for group in re.findall(r"[aeiouy]+", lemma)) == 1)
    return lemma + lemma[-1] + "ing" if doubles else lemma + "ing"


# -- beings and their stand-in bodies --------------------------------------------------------------------


@dataclass(frozen=True)
class Being:
    """A kind of character and the real body that moves like it."""

    body: str
    """The stand-in in motion queries: ``a dog``, ``a child``."""
    kind: str
    """animal, fantasy or human."""
    manner: str = ""
    """How it moves when the text does not say (``slowly`` for a tortoise)."""

    @property
    def body_noun(self) -> str:
        return self.body.split()[-1]


def _beings(words: str, body: str, kind: str, manner: str = "") -> dict[str, Being]:
    being = Being(body, kind, manner)
    return {word: being for word in words.split()}


BEINGS: dict[str, Being] = {
    **_beings("hare rabbit bunny fox vixen wolf dog hound puppy jackal coyote cat kitten lion lioness tiger leopard "
              "panther cheetah jaguar squirrel mouse rat weasel stoat badger hedgehog otter pig piglet boar goat "
              "kid lamb sheep ram deer stag fawn doe", "a dog", "animal"),
    **_beings("horse pony stallion mare colt foal donkey mule zebra ox bull cow calf", "a horse", "animal"),
    **_beings("camel", "a camel", "animal"),
    **_beings("elephant", "an elephant", "animal"),
    **_beings("crow raven bird eagle hawk falcon owl dove pigeon sparrow swan goose duck hen chicken rooster "
              "cockerel parrot stork crane heron magpie robin nightingale lark wren finch jay", "a bird", "animal"),
    **_beings("tortoise turtle snail slug sloth", "a person", "animal", "slowly"),
    **_beings("ant grasshopper cricket beetle bee spider frog toad fish bear monkey ape", "a person", "animal"),
    **_beings("elf elves fairy pixie sprite imp gnome goblin brownie leprechaun", "a child", "fantasy"),
    **_beings("dwarf troll ogre giant", "a man", "fantasy"),
    **_beings("dragon griffin gryphon phoenix", "a bird", "fantasy"),
    **_beings("unicorn centaur pegasus", "a horse", "fantasy"),
    **_beings("mermaid ghost spirit monster", "a person", "fantasy"),
    **_beings("man gentleman king prince knight soldier farmer shepherd hunter miller woodcutter fisherman "
              "sailor merchant father grandfather son brother husband smith blacksmith monk priest guard thief "
              "lord squire baker wizard sorcerer", "a man", "human"),
    **_beings("woman lady queen princess mother grandmother daughter sister wife maid witch nun", "a woman",
              "human"),
    **_beings("boy lad", "a boy", "human"),
    **_beings("girl lass", "a girl", "human"),
    **_beings("child kid baby toddler", "a child", "human"),
    **_beings("person traveller traveler stranger villager beggar innkeeper servant hero", "a person", "human"),
}
"""Character nouns → :class:`Being`. Four-legged animals move like dogs (the animals real footage shows
most), birds like birds, slow or small beings like people; fantasy beings like the people or animals
they resemble."""

FANTASY = frozenset(word for word, being in BEINGS.items() if being.kind == "fantasy")
"""Beings real footage never shows: a motion query naming one is refused."""
HUMAN_NOUNS = frozenset(word for word, being in BEINGS.items() if being.kind == "human")

PLURALS = {"elves": "elf", "children": "child", "men": "man", "women": "woman", "mice": "mouse", "geese": "goose",
           "wolves": "wolf", "sheep": "sheep", "deer": "deer", "fairies": "fairy", "people": "person",
           "oxen": "ox", "ponies": "pony", "puppies": "puppy", "bunnies": "bunny"}


def being_for(noun: str) -> Being | None:
    """The :class:`Being` of a noun (singular or plural), or None."""
    lower = noun.lower()
    lower = PLURALS.get(lower, lower)
    if lower in BEINGS:
        return BEINGS[lower]
    if lower.endswith("s") and lower[:-1] in BEINGS:
        return BEINGS[lower[:-1]]
    return None


def body_for_class_word(class_word: str) -> str | None:
    """The stand-in body of a character whose class word is ``class_word`` (``old man`` → ``a man``)."""
    words = re.findall(r"[A-Za-z]+", class_word)
    for word in reversed(words):
        being = being_for(word)
        if being is not None:
            return being.body
    return None


# -- objects and settings ------------------------------------------------------------------------------


def _objects(words: str, kind: str, phrase: str) -> dict[str, tuple[str, str]]:
    return {word: (kind, phrase) for word in words.split()}


OBJECTS: dict[str, tuple[str, str]] = {
    **_objects("tree trees oak elm beech pine willow branch branches", "tree", "a tree"),
    **_objects("ladder", "ladder", "a ladder"),
    **_objects("rope vine", "rope", "a rope"),
    **_objects("rock rocks cliff crag boulder mountain", "rock", "a rock"),
    **_objects("wall fence hedge", "wall", "a wall"),
    **_objects("stairs steps staircase", "stairs", "stairs"),
    **_objects("hill hillside slope", "hill", "a hill"),
    **_objects("horse pony stallion mare steed", "horse", "a horse"),
    **_objects("bicycle bike", "bike", "a bike"),
    **_objects("scooter", "scooter", "a scooter"),
    **_objects("camel", "camel", "a camel"),
    **_objects("elephant", "elephant", "an elephant"),
    **_objects("mule donkey", "mule", "a mule"),
    **_objects("boat canoe kayak raft", "boat", "a boat"),
    **_objects("cart wagon wheelbarrow barrow", "cart", "a cart"),
    **_objects("car", "car", "a car"),
    **_objects("tractor", "tractor", "a tractor"),
    **_objects("river stream brook water pond lake pool sea waves", "water", "water"),
    **_objects("bridge", "bridge", "a bridge"),
    **_objects("road street", "road", "a road"),
    **_objects("ball", "ball", "a ball"),
    **_objects("stone stones pebble pebbles", "stone", "a stone"),
    **_objects("axe hatchet", "axe", "an axe"),
    **_objects("spear javelin lance", "spear", "a javelin"),
    **_objects("frisbee disc", "disc", "a frisbee"),
    **_objects("coin coins", "coin", "a coin"),
    **_objects("sword swords blade", "sword", "a sword"),
    **_objects("bow arrow arrows", "bow", "a bow"),
    **_objects("snow snowball snowballs", "snow", "snow"),
    **_objects("baby infant", "baby", "a baby"),
    **_objects("sack bag basket bundle load box chest crate bucket pail", "load", "a heavy bag"),
    **_objects("guitar lute", "instrument", "guitar"),
    **_objects("violin fiddle", "instrument", "violin"),
    **_objects("flute pipe pipes recorder whistle", "instrument", "flute"),
    **_objects("harp", "instrument", "harp"),
    **_objects("drum drums", "instrument", "drums"),
    **_objects("piano", "instrument", "piano"),
    **_objects("trumpet horn", "instrument", "trumpet"),
    **_objects("cards", "cards", "cards"),
    **_objects("chess", "chess", "chess"),
    **_objects("kite", "kite", "a kite"),
    **_objects("butterfly butterflies moth dragonfly", "creature", "a butterfly"),
    **_objects("fish", "fish", "fish"),
    **_objects("birds pigeons ducks chickens hens", "bird", "birds"),
    **_objects("goat goats", "goat", "goats"),
    **_objects("cat kitten", "cat", "a cat"),
    **_objects("dog puppy hound", "dog", "a dog"),
    **_objects("grapes grape apple apples fruit berries berry cherries pear pears plum plums orange", "fruit",
               "fruit"),
    **_objects("cake pie", "cake", "cake"),
    **_objects("bread loaf", "bread", "bread"),
    **_objects("carrot carrots", "carrot", "carrots"),
    **_objects("corn grain wheat seeds seed", "grain", "grain"),
    **_objects("flower flowers rose roses daisies", "flower", "flowers"),
    **_objects("wood firewood logs log sticks twigs", "wood", "wood"),
    **_objects("door gate", "door", "a door"),
    **_objects("window windows", "window", "windows"),
    **_objects("dishes dish plates", "dish", "dishes"),
    **_objects("hair", "hair", "hair"),
    **_objects("gift present", "gift", "a present"),
    **_objects("letter", "letter", "a letter"),
}
"""Object nouns → (class, generic noun phrase); classes pick an :class:`Action`'s object phrase."""


@dataclass(frozen=True)
class Place:
    """A setting noun: where a shot happens."""

    path: str
    """How a moving body crosses it in a query: ``across a field``."""
    preposition: str
    """``in``/``on``/``by``: how a caption places a shot there."""


def _places(words: str, path: str, preposition: str) -> dict[str, Place]:
    place = Place(path, preposition)
    return {word: place for word in words.split()}


SETTINGS: dict[str, Place] = {
    **_places("meadow meadows field fields grass grassland pasture plain plains prairie lawn heath moor",
              "across a field", "in"),
    **_places("hill hills hillside slope mountain mountains mountainside", "up a hill", "on"),
    **_places("forest forests wood woods woodland jungle grove thicket glade clearing", "through a forest", "in"),
    **_places("road path lane track trail highway", "along a road", "on"),
    **_places("street streets town village city market square alley", "down a street", "in"),
    **_places("river riverbank stream brook", "along a river", "by"),
    **_places("lake pond pool", "along a lake", "by"),
    **_places("sea ocean beach shore coast sand dunes", "along a beach", "on"),
    **_places("snow ice", "through snow", "in"),
    **_places("desert", "across a desert", "in"),
    **_places("garden orchard vineyard farm farmyard yard barnyard", "across a garden", "in"),
    **_places("castle palace courtyard hall tower", "across a courtyard", "in"),
    **_places("house cottage kitchen room cave inn tavern mill barn hut cellar attic library", "across a room",
              "in"),
    **_places("bridge", "across a bridge", "on"),
    **_places("valley", "across a valley", "in"),
    **_places("sky clouds", "across the sky", "in"),
}
"""Setting nouns → :class:`Place`."""

SPEED_WORDS = {
    "slowly": "slowly", "steadily": "slowly", "leisurely": "slowly", "carefully": "slowly", "wearily": "slowly",
    "quickly": "fast", "swiftly": "fast", "fast": "fast", "rapidly": "fast", "hurriedly": "fast",
    "briskly": "fast", "speedily": "fast",
}
"""Adverbs that say how fast a body moves → the word a query uses."""

DETERMINERS = frozenset("the a an his her their its my your our this that these those each every some no "
                        "another one two three".split())
PREPOSITIONS = frozenset("in on at of for with from by into onto upon under over across through along around "
                         "toward towards behind beside near past about after before without against among "
                         "between beneath above below up down off out".split())
ADJECTIVES_BEFORE_NOUNS = frozenset(
    "long short great big little quick slow fast final last first good high wild sudden mighty graceful happy "
    "merry single second few loud soft gentle strange wonderful brief hard steady deep proud light heavy "
    "swift lazy easy whole".split())
SUBJECT_PRONOUNS = frozenset("he she it they".split())
NEGATIONS = frozenset("not never cannot no nor nothing nobody none neither".split())
CLAUSE_WORDS = frozenset("and but while as when because until though although whereas so then where which who "
                         "whom whose that if before after".split())
STOP_WORDS = DETERMINERS | PREPOSITIONS | frozenset(
    "and or but to is are was were be been being as it he she they him her them his hers its their is very "
    "so then too just also there here".split())
