"""The spec: YAML -> BehaviorSpec -> CompiledBehavior. Never imports torch."""
