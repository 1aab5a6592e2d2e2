"""Shared test set-up.

- ``tests/helpers`` is importable (pytest runs with --import-mode=importlib).
- Property tests (hypothesis) are derandomized in CI (``CI`` set), random elsewhere.
- Every test session uses its own cache directory, so the anny model (``anny_model``) is built
  from anny here, exactly as on a user's first run (anny's compiled kernels are cached by warp);
  the default model (``default_model``) is the ICT export shipped in the package.
"""

import os
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import settings

sys.path.insert(0, str(Path(__file__).parent / "helpers"))

# CI (.ci/run sets CI=true) runs the property tests on hypothesis's fixed examples, so that a
# submission does not pass or fail by the draw; local runs keep drawing new ones
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

if "SKULLSEARCH_TEST_CACHE" in os.environ:
    os.environ["SKULLSEARCH_CACHE"] = os.environ["SKULLSEARCH_TEST_CACHE"]
else:
    os.environ["SKULLSEARCH_CACHE"] = tempfile.mkdtemp(prefix="skullsearch-test-cache-")
os.environ.pop("SKULLSEARCH_FACE_MODEL", None)

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


@pytest.fixture(scope="session")
def default_model():
    """The open default face model (built once per session)."""
    from skullsearch import FaceModel

    return FaceModel.default()


@pytest.fixture(scope="session")
def anny_model():
    """The open anny head (``--face-model anny``), built from anny once per session."""
    from skullsearch import FaceModel

    return FaceModel.builtin("anny")


@pytest.fixture(scope="module")
def landmark_rig(default_model):
    """The default model's 68-landmark rig with 90 shape and 90 expression components."""
    from skullsearch.encoder.fitting import LandmarkRig

    return LandmarkRig(default_model, 90, 90)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module's small fits (``pytestmark = pytest.mark.usefixtures(...)``):
    on a shared 2-core machine two threads spend most of their time waiting for each other."""
    from torch_threads import one_thread

    with one_thread():
        yield


@pytest.fixture(scope="module")
def mean_points(default_model):
    """The 36 soft-tissue points (36, 3) float64 mm of the mean face of the module's
    ``default_model`` (a model test module may override that fixture)."""
    import torch

    with torch.no_grad():
        return default_model.soft_tissue(batch_size=1)[0].double().numpy()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """A folder for files a person may want to look at after the run (renders, meshes)."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
