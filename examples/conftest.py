# Loading the library under test is the test suite's job: import it (or torch.ops.load_library).
import ops  # noqa: F401
