updates = []
previews = []


class ProgressBar:
    def __init__(self, total, node_id=None):
        self.total = total
        self.current = 0

    def update_absolute(self, value, total=None, preview=None):
        self.current = value
        updates.append((value, self.total))
        if preview is not None:
            previews.append((value, preview))
