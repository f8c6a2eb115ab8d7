"""Tools around the plugin rather than the method: the self-test and its step timing, the offline wheelhouse, the
synthetic phantom the self-test and the tests train on, and the runner of the plugin's own commands."""
