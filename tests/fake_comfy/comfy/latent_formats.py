class SD15:
    scale_factor = 0.18215
