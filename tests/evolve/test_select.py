"""evolve.select: the top-K trials re-scored on all dev documents, the pick by the re-scored value."""

import optuna
from omegaconf import OmegaConf


def test_select_rescores_the_top_k_and_picks_by_the_rescored_value() -> None:
    """The search's best is not kept when another top-K trial re-scores higher on all dev documents."""
    from optuna.distributions import FloatDistribution
    from optuna.trial import create_trial

    from evolve.select import candidates, select

    cfg = OmegaConf.create({"tasks": {"names": ["a"], "weights": None}, "optimizer": {"multi_objective": False},
                            "select": {"top_k": 3}})
    study = optuna.create_study(direction="maximize")
    for i, v in enumerate([0.5, 0.9, 0.8, 0.7, 0.95]):
        study.add_trial(create_trial(value=v, params={"x": i / 10}, distributions={"x": FloatDistribution(0, 1)}))
    rescored = {0: 0.99, 1: 0.6, 2: 0.75, 3: 0.7, 4: 0.65}  # trial 0 would win but is not in the top 3
    for n, v in rescored.items():
        study.set_user_attr(f"devall:trial{n}", {"a_dev": v})
    assert [t.number for t in candidates(study, 3)] == [1, 2, 4]
    record = select(cfg, study, ctx=None)  # every candidate's re-score is cached: no model is needed
    assert record["pick"] == 2 and [c["trial"] for c in record["candidates"]] == [1, 2, 4]
    assert {c["trial"]: c["rescored"][0] for c in record["candidates"]} == {1: 0.6, 2: 0.75, 4: 0.65}
    assert study.user_attrs["selection"]["pick"] == 2


def test_select_takes_the_top_k_of_each_objective() -> None:
    from optuna.distributions import FloatDistribution
    from optuna.trial import create_trial

    from evolve.objective import metric_names
    from evolve.select import candidates

    study = optuna.create_study(directions=["maximize", "maximize"])
    for vals in ([0.9, 0.1], [0.8, 0.2], [0.1, 0.9], [0.2, 0.8], [0.5, 0.5]):
        study.add_trial(create_trial(values=vals, params={"x": 0.1}, distributions={"x": FloatDistribution(0, 1)}))
    assert [t.number for t in candidates(study, 2)] == [0, 1, 2, 3]
    cfg = OmegaConf.create({"tasks": {"names": ["arith", "units"]}, "optimizer": {"multi_objective": True}})
    assert metric_names(cfg) == ["arith_dev", "units_dev"]
