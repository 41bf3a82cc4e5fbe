"""Stand-in for ComfyUI's server module: node texts are recorded."""


class PromptServer:
    instance = None

    def __init__(self):
        self.texts = []

    def send_progress_text(self, text, node_id, sid=None):
        self.texts.append((node_id, text))


PromptServer.instance = PromptServer()
