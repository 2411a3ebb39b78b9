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


def reject_bindings(configurable, parameters, caller):
  """Raises if gin binds any of `parameters` of `configurable`.

  Args:
    configurable: The gin name of the configurable, e.g. 'AxialResNet'.
    parameters: Names of the parameters `caller` passes explicitly.
    caller: Who sets them, for the message (e.g. "build_model(name='tiny')").

  Raises:
    ValueError: Naming the first bound parameter, its value and the caller.
  """
  bindings = gin.get_bindings(configurable)
  for parameter in sorted(set(parameters) & set(bindings)):
    raise ValueError(
        f'The gin binding {configurable}.{parameter} = '
        f'{bindings[parameter]!r} cannot be honoured: {caller} sets '
        f'{parameter} itself. Remove the binding.')
