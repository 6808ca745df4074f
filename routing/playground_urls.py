from django.urls import path

from routing import playground

app_name = "playground"

urlpatterns = [
    path("", playground.playground_index, name="index"),
    path("feedback", playground.playground_feedback, name="feedback"),
]
