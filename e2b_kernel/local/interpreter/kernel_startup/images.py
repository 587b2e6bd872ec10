"""Start-up file of the local service's python kernels: PIL images show up as results, as in E2B.

There is no screen in a sandbox, so like E2B's template, `Image.show()` and `Image.save()` to a
path `display()` the image, which then comes back as a `png` result. Saving to a file object
(as IPython's own PNG formatter does) displays nothing.
"""


def _e2b_patch_pil():
    try:
        from PIL import Image
    except ImportError:
        return
    import functools

    from IPython.display import display

    original_save = Image.Image.save

    # Wrapped (functools.wraps): the E2B Python kernel puts the originals back, as python3.
    @functools.wraps(Image.Image.show)
    def show(self, *args, **kwargs):
        display(self)

    @functools.wraps(original_save)
    def save(self, fp, *args, **kwargs):
        result = original_save(self, fp, *args, **kwargs)
        if isinstance(fp, str):
            display(self)
        return result

    # Patching the class is the point: every image, however created, gets the sandbox behaviour.
    Image.Image.show = show  # type: ignore[method-assign]
    Image.Image.save = save  # type: ignore[method-assign]


_e2b_patch_pil()
del _e2b_patch_pil
