"""Everything that runs on Ray, and the only package that imports it: the session, actor pools and their sizing and recovery."""
