"""The notebooks' classroom tools: the sampling explorer (widgets) and the exercise checks."""
