"""Reward functions for the AvR tests (`config.avr.reward=tests.avr_rewards:NAME`)."""


def near_four_characters(prompt, response):
  """Graded: the closer the response is to four characters, the better."""
  del prompt
  return -abs(len(response.strip()) - 4)


def broken(prompt, response):
  raise ValueError(f"cannot score {response!r} for {prompt!r}")
