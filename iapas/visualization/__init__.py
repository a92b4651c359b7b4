"""Pictures people look at: heat-map overlays with labelled boxes."""
