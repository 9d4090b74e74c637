"""Plain `nn.Module`s. They know shapes, not tasks: any task can wrap any net."""
