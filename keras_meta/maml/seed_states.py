"""Random-seed states in `.keras` files.

Keras does not write `SeedGenerator` states (dropout and the like) to
`.keras` files; MAML does, so that a run resumed from a checkpoint draws
the same random numbers as one that never stopped. Files without them
(keras_meta 0.1.0) load with fresh states.
"""


def seed_states(model):
    """The random-seed state variables of a Keras model."""
    return [v for v in model.variables if "seed_generator_state" in v.path]


class SeedStates:
    """Mixin of `MAML`: saves and loads the wrapped model's seed states
    beside MAML's own variables."""

    def save_own_variables(self, store):
        super().save_own_variables(store)
        for j, variable in enumerate(seed_states(self.model)):
            store[f"seed_state_{j}"] = variable

    def load_own_variables(self, store):
        own = self._trainable_variables + self._non_trainable_variables
        names = [str(k) for k in store.keys()]
        seeds = sorted(n for n in names if n.startswith("seed_state_"))
        if len(names) - len(seeds) != len(own):
            raise ValueError(
                f"The saved {type(self).__name__} has "
                f"{len(names) - len(seeds)} variables of its own, this one "
                f"{len(own)} ({[v.name for v in own]}).")
        for i, variable in enumerate(own):
            variable.assign(store[f"{i}"])
        states = seed_states(self.model)
        if len(seeds) == len(states):
            for j, variable in enumerate(states):
                variable.assign(store[f"seed_state_{j}"])
