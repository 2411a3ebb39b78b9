"""Gin bindings that the model code cannot honour are errors.

A gin binding only sets a default: an argument the caller passes explicitly
wins over it, silently. So every width, head or switch is configured in one
place: a parameter that its caller always sets is in the `denylist` of its
configurable (binding it fails at parse time, naming it), and a caller that
sets a parameter only on some paths (e.g. the MaX-DeepLab switches of a
transformer layer, the widths of the tiny model) first calls
`reject_bindings`, which fails at build time, naming the binding.
"""
import gin


def reject_bindings(configurable, values, caller):
  """Raises if gin binds a parameter of `configurable` to another value.

  Args:
    configurable: The gin name of the configurable, e.g. 'AxialResNet'.
    values: {parameter: value} that `caller` passes explicitly.
    caller: Who sets them, for the message (e.g. "build_model(name='tiny')").

  Raises:
    ValueError: Naming the first such binding, its value and the caller's.
  """
  bindings = gin.get_bindings(configurable)
  for parameter in sorted(set(values) & set(bindings)):
    if bindings[parameter] != values[parameter]:
      raise ValueError(
          f'The gin binding {configurable}.{parameter} = '
          f'{bindings[parameter]!r} cannot be honoured: {caller} sets '
          f'{parameter} = {values[parameter]!r} itself. Remove the binding.')
