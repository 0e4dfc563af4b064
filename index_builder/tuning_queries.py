"""Motion descriptions used to tune an IVF index's search settings at build time.

Searches are text queries about motion; tuning with such queries (embedded by the index's own model)
measures recall where it matters. Phrases follow common action-recognition classes, in plain words.
"""

MOTION_QUERIES: tuple[str, ...] = (
    "a person running", "a person walking down a street", "a child jumping on a trampoline",
    "someone waving their hand", "a man riding a horse", "a woman riding a bicycle", "a person swimming",
    "a person dancing", "two people hugging", "a person climbing a wall", "a person skiing down a slope",
    "a person surfing a wave", "a skateboarder doing a trick", "a person playing guitar",
    "a person playing the drums", "a person juggling balls", "a man kicking a soccer ball",
    "a person throwing a ball", "a person catching a frisbee", "a dog running across a field",
    "a dog playing with a ball", "a cat jumping onto a table", "a bird flapping its wings",
    "a horse galloping", "a person doing a cartwheel", "a gymnast doing a flip", "a person doing push ups",
    "a person lifting weights", "a person stretching", "a person doing yoga", "a boxer punching",
    "two people fighting", "a person chopping wood", "a person cooking in a kitchen",
    "a person brushing their teeth", "a person clapping", "a person laughing", "a person sitting down",
    "a person standing up", "a person opening a door", "a person carrying a box", "a person pushing a cart",
    "a person riding a scooter", "a person on a segway", "a person driving a car", "a person rowing a boat",
    "a person ice skating", "a person snowboarding", "a person playing tennis", "a person playing basketball",
    "a person shooting a basketball", "a person swinging a golf club", "a person bowling",
    "a person hitting a baseball", "a person diving into a pool", "a person jumping rope",
    "a person hula hooping", "a person spinning around", "a person falling down", "a child crawling",
    "a crowd cheering", "people marching in a parade", "a person waving a flag", "a person painting a wall",
    "a person writing on a board", "a person typing on a keyboard", "a person drinking from a cup",
    "a person eating with chopsticks", "a person feeding a pet", "a person walking a dog",
)
