"""Walking a jaxpr: every dot_general, nested sub-jaxprs included."""


def dot_generals(jaxpr):
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      yield eqn
    for value in eqn.params.values():
      for sub in (value if isinstance(value, (tuple, list)) else (value,)):
        if hasattr(sub, "eqns"):
          yield from dot_generals(sub)
        elif hasattr(getattr(sub, "jaxpr", None), "eqns"):
          yield from dot_generals(sub.jaxpr)
