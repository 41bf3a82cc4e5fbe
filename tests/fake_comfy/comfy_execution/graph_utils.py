"""Stand-in for comfy_execution.graph_utils.ExecutionBlocker."""


class ExecutionBlocker:
    def __init__(self, message):
        self.message = message
