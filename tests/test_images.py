"""images.quiet_decoders in threads: overlapping decodes keep Pillow's bomb warning an error
while any of them runs, and leave the process's warning filters as they found them."""

import threading
import warnings

import pytest
from PIL import Image

from simexplain.images import quiet_decoders


def _bomb_is_error() -> bool:
    try:
        warnings.warn("a bomb", Image.DecompressionBombWarning, stacklevel=2)
    except Image.DecompressionBombWarning:
        return True
    return False


def test_overlapping_decodes_in_threads_keep_the_filters_and_restore_them():
    with warnings.catch_warnings():  # whatever happens here stays in this test
        warnings.simplefilter("always")
        before = list(warnings.filters)
        first_inside, second_inside, first_left = (threading.Event() for _ in range(3))
        seen = {}

        def first():
            with quiet_decoders():
                first_inside.set()
                second_inside.wait(5)
            first_left.set()

        def second():
            first_inside.wait(5)
            with quiet_decoders():
                second_inside.set()
                first_left.wait(5)
                # the first decode ended while this one runs: still quiet, bomb still an error
                seen["bomb_error"] = _bomb_is_error()
                with warnings.catch_warnings(record=True) as caught:
                    warnings.warn("a decoder note", UserWarning, stacklevel=2)
                seen["silenced"] = not caught

        threads = [threading.Thread(target=first), threading.Thread(target=second)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert seen == {"bomb_error": True, "silenced": True}
        assert list(warnings.filters) == before
        with pytest.warns(Image.DecompressionBombWarning):  # a warning again, not an error
            assert not _bomb_is_error()


def test_nested_and_repeated_use_restores_the_filters():
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        before = list(warnings.filters)
        for _ in range(3):
            with quiet_decoders(), quiet_decoders(tiff=True):
                assert _bomb_is_error()
        assert list(warnings.filters) == before
