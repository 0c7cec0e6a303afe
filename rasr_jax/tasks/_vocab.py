"""Word lists shared by several generators."""

FEMALE_NAMES = (
    "amy",
    "mia",
    "eva",
    "lily",
    "nora",
    "zoe",
    "ella",
    "ruby",
    "ivy",
    "lucy",
    "emma",
    "sara",
    "anna",
    "lena",
    "maya",
    "iris",
    "tina",
    "nina",
    "rosa",
    "jade",
)
MALE_NAMES = (
    "ben",
    "tom",
    "sam",
    "leo",
    "max",
    "cal",
    "dan",
    "finn",
    "hugo",
    "ivan",
    "jon",
    "karl",
    "liam",
    "noah",
    "omar",
    "paul",
    "raj",
    "theo",
    "victor",
    "yuri",
)
NAMES = FEMALE_NAMES + MALE_NAMES

CITIES = (
    "oslo",
    "rome",
    "paris",
    "lima",
    "cairo",
    "delhi",
    "tokyo",
    "quito",
    "dublin",
    "berlin",
    "madrid",
    "vienna",
    "prague",
    "athens",
    "lisbon",
    "seoul",
    "nairobi",
    "boston",
    "denver",
    "sydney",
)


def with_article(word: str) -> str:
  """Prefix a singular noun with "a" or "an"."""
  return ("an " if word[0] in "aeiou" else "a ") + word
