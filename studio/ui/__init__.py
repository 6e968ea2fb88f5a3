"""The Gradio UI: one module per tab, each a thin layer mapping widgets to core calls."""
