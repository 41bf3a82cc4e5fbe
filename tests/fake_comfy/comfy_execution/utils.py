"""Stand-in for comfy_execution.utils: the executing node's context."""
from collections import namedtuple

ExecutionContext = namedtuple("ExecutionContext", "prompt_id node_id list_index")
current = ExecutionContext("prompt", "7", None)


def get_executing_context():
    return current
