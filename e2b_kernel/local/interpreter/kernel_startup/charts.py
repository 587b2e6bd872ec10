"""Start-up file of the local service's python kernels: `e2b/chart` data for matplotlib figures.

E2B attaches the plotted data of a figure to its display (`Result.chart`, parsed by the SDK's
`charts.py`): line, scatter, bar and pie charts, a `superchart` for several axes, otherwise
`unknown`. Extraction never raises: a figure it cannot read just has no chart.
"""


def _e2b_install_chart_formatter():
    import datetime
    import math
    import re
    import sys
    from typing import Any

    from IPython import get_ipython
    from IPython.core.formatters import JSONFormatter
    from traitlets import Unicode

    shell = get_ipython()
    if shell is None:
        return

    class E2BChartFormatter(JSONFormatter):
        """`e2b/chart` for matplotlib figures.

        Matched in `__call__` rather than registered by type: activating a matplotlib backend
        (`select_figure_formats`) removes every formatter's printer for Figure.
        """

        format_type = Unicode("e2b/chart")

        def __call__(self, obj):
            figure_module = sys.modules.get("matplotlib.figure")
            figure_type = getattr(figure_module, "Figure", None)
            if self.enabled and figure_type is not None and isinstance(obj, figure_type):
                return figure_chart(obj)
            return None

    def plain(value):
        if hasattr(value, "item") and not isinstance(value, (str, bytes)):
            try:
                value = value.item()
            except (ValueError, TypeError):
                pass
        if isinstance(value, (datetime.datetime, datetime.date)):
            return value.isoformat()
        if isinstance(value, float):
            return value if math.isfinite(value) else None
        if value is None or isinstance(value, (bool, int, str)):
            return value
        return str(value)

    def scale(axis, name):
        converter = getattr(axis, "get_converter", lambda: getattr(axis, "converter", None))()
        kind = type(converter).__name__ if converter is not None else ""
        if "Date" in kind:
            return "datetime"
        if "StrCategory" in kind:
            return "categorical"
        return name

    def ticks(axis, labels):
        positions = [plain(tick) for tick in axis.get_ticklocs()]
        texts = [label.get_text() for label in labels]
        if not any(texts):  # not drawn yet: ask the formatter
            texts = list(axis.get_major_formatter().format_ticks(axis.get_ticklocs()))
        return positions, texts

    def numbered_label(artist, hidden, shown):
        # As e2b_charts: matplotlib's "_child3" for an unlabelled line is "Line 3", its
        # "_container1" for a bar group "Group 1".
        label = str(artist.get_label() or "")
        suffix = label[len(hidden) :]
        return f"{shown} {int(suffix)}" if label.startswith(hidden) and suffix.isdigit() else label

    def unit(label):
        # As e2b_charts: "Time [s]" or "Speed (m/s)" names its unit.
        match = re.search(r"\s\((.*?)\)|\[(.*?)\]", label or "")
        return (match.group(1) or match.group(2)) if match else None

    def axes_chart(ax):
        from matplotlib.collections import PathCollection
        from matplotlib.container import BarContainer
        from matplotlib.patches import Wedge

        title = ax.get_title() or None
        wedges = [patch for patch in ax.patches if isinstance(patch, Wedge)]
        if wedges:
            elements = [
                {
                    "label": w.get_label(),
                    "angle": plain(abs(w.theta2 - w.theta1)),
                    "radius": plain(w.r),
                }
                for w in wedges
            ]
            return {"type": "pie", "title": title, "elements": elements}
        chart = {
            "title": title,
            "x_label": ax.get_xlabel() or None,
            "y_label": ax.get_ylabel() or None,
            "x_unit": unit(ax.get_xlabel()),
            "y_unit": unit(ax.get_ylabel()),
        }
        bars = [c for c in ax.containers if isinstance(c, BarContainer)]
        if bars:
            x_ticks, x_labels = ticks(ax.xaxis, ax.get_xticklabels())
            by_position = dict(zip(x_ticks, x_labels, strict=False))
            elements = []
            for container in bars:
                for rect in container:
                    center = rect.get_x() + rect.get_width() / 2
                    label = by_position.get(plain(center), f"{center:g}")
                    elements.append(
                        {
                            "label": label,
                            "group": numbered_label(container, "_container", "Group"),
                            "value": float(rect.get_height()),
                        }
                    )
            return {"type": "bar", **chart, "elements": elements}
        lines = [line for line in ax.get_lines() if line.get_visible()]
        scatters = [c for c in ax.collections if isinstance(c, PathCollection)]
        if not lines and not scatters:
            return {"type": "unknown", "title": title, "elements": []}
        series: list[tuple[str, Any]]
        if lines:
            kind = "line"
            series = [
                (
                    numbered_label(line, "_child", "Line"),
                    zip(line.get_xdata(), line.get_ydata(), strict=False),
                )
                for line in lines
            ]
        else:
            kind = "scatter"
            series = [(str(c.get_label() or ""), c.get_offsets()) for c in scatters]
        x_ticks, x_labels = ticks(ax.xaxis, ax.get_xticklabels())
        y_ticks, y_labels = ticks(ax.yaxis, ax.get_yticklabels())
        return {
            "type": kind,
            **chart,
            "x_ticks": x_ticks,
            "x_tick_labels": x_labels,
            "x_scale": scale(ax.xaxis, ax.get_xscale()),
            "y_ticks": y_ticks,
            "y_tick_labels": y_labels,
            "y_scale": scale(ax.yaxis, ax.get_yscale()),
            "elements": [
                {"label": label, "points": [[plain(x), plain(y)] for x, y in points]}
                for label, points in series
            ],
        }

    def figure_chart(figure):
        try:
            axes = [ax for ax in figure.get_axes() if ax.get_visible()]
            if not axes:
                return None
            if len(axes) == 1:
                return axes_chart(axes[0])
            suptitle = figure.get_suptitle() if hasattr(figure, "get_suptitle") else None
            return {
                "type": "superchart",
                "title": suptitle or None,
                "elements": [axes_chart(ax) for ax in axes],
            }
        except Exception:
            return None  # never break a plot over its chart data

    formatter = E2BChartFormatter(parent=shell.display_formatter)
    shell.display_formatter.formatters["e2b/chart"] = formatter


_e2b_install_chart_formatter()
del _e2b_install_chart_formatter
