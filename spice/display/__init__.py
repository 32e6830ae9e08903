"""Event displays: interactive 3D pages (plotly, offline HTML) and static figures (matplotlib).

- `event_figure(event, outputs=None, predicted=None, color_by="true_instance")` -> plotly Figure
- `write_html(fig, path)` -> standalone page with linked cameras, colour-mode menu, camera presets
- `write_gallery(events, outputs, path, predicted=None, metrics=None)` -> index.html + one page per event
- `event_figure_static(event, outputs=None, predicted=None, color_by=..., path=None)` -> matplotlib Figure
"""
from spice.display.colors import MODES, color_modes, match_to_true, palette
from spice.display.gallery import write_gallery
from spice.display.interactive import event_figure, to_html, write_html
from spice.display.static import event_figure_static

__all__ = ["MODES", "color_modes", "match_to_true", "palette", "event_figure", "to_html", "write_html",
           "write_gallery", "event_figure_static"]
