"""Run views: the base view, the delta view (with its page module and CSS), the ipywidgets
view, the comm helpers and the permission prompt."""
