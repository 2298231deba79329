"""The methods `micro adapt` scores, one plug-in module per method or family (micro.router.plugin).
The list of them, with their order and groups, is micro.methods."""
